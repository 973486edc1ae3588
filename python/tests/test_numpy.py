"""The core API on NumPy arrays: compile, signatures, calls, conversions and errors."""

import numpy as np
import pytest

import lossc
from conftest import ROOT, cli

CE = "loss ce(s: f32[N, C], y: idx[N] < C, t: f32 = 1.0) { mean[i] (logsumexp[k] s[i, k] / t) - s[i, y[i]] / t }"


def bundled_examples():
    for data in sorted((ROOT / "examples/data").iterdir()):
        path = ROOT / "examples" / f"{data.name}.lx"
        inputs = {f.stem: np.load(f) for f in sorted(data.glob("*.npy"))}
        yield path, inputs


@pytest.mark.parametrize("path,inputs", list(bundled_examples()), ids=lambda p: getattr(p, "stem", ""))
def test_examples_equal_the_rust_interpreter(path, inputs, tmp_path):
    """The JIT through NumPy (float32, in place) and the interpreter (float64) agree with the CLI's
    interpreter, whose results `lossc eval --backend interp --out` writes."""
    exact = lossc.compile(path, backend="interp").loss()
    fast = lossc.compile(path).loss()
    floats = {n: a.astype(np.float64) if a.dtype.kind == "f" else a for n, a in inputs.items()}
    loss64, grads64 = exact(**floats)
    loss32, grads32 = fast(**inputs)
    cli("eval", path, "--data", ROOT / "examples/data" / path.stem, "--grad", "--backend", "interp", "--out", tmp_path)
    want = np.load(tmp_path / "loss.npy")
    assert loss64 == pytest.approx(float(want), rel=1e-12, abs=1e-12)
    assert loss32 == pytest.approx(float(want), rel=1e-4, abs=1e-5)
    assert set(grads64) == set(grads32) and grads64
    for name in grads64:
        g = np.load(tmp_path / f"grad_{name}.npy")
        np.testing.assert_allclose(grads64[name], g, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(grads32[name], g, rtol=1e-3, atol=1e-5)


def test_compile_error_lists_diagnostics(tmp_path):
    with pytest.raises(lossc.CompileError) as e:
        lossc.compile("loss f(x: f32[N]) {\n    mean[i] x[j]\n}")
    assert "unknown name `j`" in str(e.value)
    codes = [d[0] for d in e.value.diagnostics]
    assert "lossc::E101" in codes
    code, message, line, column = e.value.diagnostics[codes.index("lossc::E101")]
    assert (message, line, column) == ("unknown name `j`", 2, 15)
    # The same rendering as the CLI's.
    src = tmp_path / "bad.lx"
    src.write_text("loss f(x: f32[N]) {\n    mean[i] x[j]\n}")
    run = cli("check", src, check=False)
    assert run.returncode == 1 and "unknown name `j`" in run.stderr
    with pytest.raises(lossc.CompileError, match="cannot read"):
        lossc.compile("no/such/file.lx")


def test_signature_hyperparameters_and_gradient_source():
    ce = lossc.compile(CE)["ce"]
    assert ce.signature == "ce(s: f32[N, C], y: idx[N] < C, t: f32 = 1.0)"
    assert ce.hyperparameters == {"t": 1.0}
    assert [i.name for i in ce.differentiable] == ["s"]
    path = ROOT / "examples/ldr_kl.lx"
    ldr = lossc.compile(path).loss()
    assert ldr.gradient_source().strip() == cli("compile", path, "--emit", "grad").stdout.strip()
    assert lossc.std("robust::ldr_kl").signature == lossc.std("std::robust::ldr_kl").signature
    assert any(p == "std::robust::ldr_kl" for p, _, _ in lossc.stdlib())
    with pytest.raises(lossc.CompileError, match="no loss named `nope`"):
        lossc.compile(CE)["nope"]


def test_cross_entropy_values_and_hyperparameters():
    ce = lossc.compile(CE)["ce"]
    rng = np.random.default_rng(0)
    s = rng.standard_normal((7, 5)).astype(np.float32)
    y = rng.integers(0, 5, 7)
    for t in (1.0, 0.5):
        loss, grads = ce(s=s, y=y, t=t)
        z = s / t
        p = np.exp(z - z.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        want = np.mean(-np.log(p[np.arange(7), y]))
        onehot = np.eye(5)[y]
        assert loss == pytest.approx(want, rel=1e-5)
        np.testing.assert_allclose(grads["s"], (p - onehot) / (7 * t), rtol=1e-4, atol=1e-6)


def test_conversions():
    """float32/int32/int64 C-contiguous arrays are read in place; float64, strided views and lists are
    converted once; float labels are refused."""
    ce = lossc.compile(CE)["ce"]
    base = np.arange(12, dtype=np.float32).reshape(3, 4) / 10
    y = np.array([0, 3, 1])
    loss, grads = ce(s=base, y=y)
    for s in (base.astype(np.float64), np.asfortranarray(base), base.tolist()):
        l2, g2 = ce(s=s, y=y)
        assert l2 == loss
        np.testing.assert_array_equal(g2["s"], grads["s"])
    for labels in (y.astype(np.int32), y.astype(np.uint8), y[::-1][::-1], [0, 3, 1]):
        assert ce(s=base, y=labels)[0] == loss
    with pytest.raises(lossc.InputError, match="must be integer labels"):
        ce(s=base, y=y.astype(np.float32))


def test_per_sample_loss_and_extra_outputs():
    per = lossc.compile("loss ce_per(s: f32[N, C], y: idx[N] < C) -> f32[N] {\n"
                        "    let l[i] = (logsumexp[k] s[i, k]) - s[i, y[i]]\n    l\n}").loss()
    assert per.per_sample
    rng = np.random.default_rng(1)
    s = rng.standard_normal((5, 3)).astype(np.float32)
    y = np.array([0, 1, 2, 0, 1])
    values, grads = per(s=s, y=y)
    assert values.shape == (5,)
    w = np.arange(5, dtype=np.float32)
    _, weighted = per(s=s, y=y, cotangent=w)
    np.testing.assert_allclose(weighted["s"], grads["s"] * w[:, None], rtol=1e-5, atol=1e-7)


BAD_CALLS = [
    # (inputs, hyperparameters, exception)
    ({"s": np.zeros((2, 3), np.float32), "y": np.array([0, 3])}, {}, lossc.LabelError),
    ({"s": np.zeros((2, 3), np.float32)}, {}, lossc.InputError),
    ({"s": np.zeros((2, 3), np.float32), "y": np.array([0, 1, 2])}, {}, lossc.ShapeError),
    ({"s": np.zeros((2, 3), np.float32), "y": np.array([0, 1])}, {"tau": 1.0}, lossc.HyperparameterError),
    ({"s": np.zeros((2, 3, 1), np.float32), "y": np.array([0, 1])}, {}, lossc.ShapeError),
]


@pytest.mark.parametrize("inputs,hypers,error", BAD_CALLS)
def test_bad_calls_raise_the_cli_message(inputs, hypers, error, tmp_path):
    ce = lossc.compile(CE)["ce"]
    with pytest.raises(error) as e:
        ce(**inputs, **hypers)
    assert isinstance(e.value, lossc.CallError)
    src = tmp_path / "ce.lx"
    src.write_text(CE)
    args = ["eval", src]
    for name, a in inputs.items():
        np.save(tmp_path / f"{name}.npy", a)
        args += ["--input", f"{name}={tmp_path / name}.npy"]
    for name, v in hypers.items():
        args += ["--set", f"{name}={v}"]
    run = cli(*args, check=False)
    assert run.returncode == 1
    assert run.stderr.strip() == f"error: {e.value}"


def test_no_panic_crosses_into_python():
    """Hostile calls raise lossc exceptions (never a PanicException or a crash)."""
    ce = lossc.compile(CE)["ce"]
    with pytest.raises(lossc.ShapeError):
        ce(s=np.zeros((0, 3), np.float32), y=np.zeros(1, np.int64))
    with pytest.raises(lossc.InputError):
        ce(s=np.array(["a", "b"]), y=np.zeros(2, np.int64))
    with pytest.raises(lossc.HyperparameterError):
        ce(s=np.zeros((2, 3), np.float32), y=np.zeros(2, np.int64), q=1.0)
    with pytest.raises(ValueError):
        ce(s=np.zeros((2, 3), np.float32), y=np.zeros(2, np.int64), t="x")
    # An empty batch is a call like any other (the mean of nothing is NaN, as in the CLI).
    loss, grads = ce(s=np.zeros((0, 3), np.float32), y=np.zeros(0, np.int64))
    assert np.isnan(loss) and grads["s"].shape == (0, 3)

"""An ahead-of-time library (`lossc compile FILE -o libNAME.so`) called from Python through ctypes, as a
program without the lossc package would: the same loss and gradient as `lossc.compile`, and bad calls as a
status code and the package's message."""

import ctypes

import numpy as np
import pytest

import lossc
from conftest import ROOT, cli

SOURCE = ROOT / "examples/distill.lx"

F32P = ctypes.POINTER(ctypes.c_float)
I64P = ctypes.POINTER(ctypes.c_int64)


def f32(a):
    return np.ascontiguousarray(a, dtype=np.float32)


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    out = tmp_path_factory.mktemp("aot")
    cli("compile", SOURCE, "-o", out / "libdistill.so", "--header", out / "distill.h")
    header = (out / "distill.h").read_text()
    assert "int lossc_distill(" in header, header
    return ctypes.CDLL(str(out / "libdistill.so"))


def call_generic(lib, name, inputs, results, hypers=None, threads=2):
    """Calls `lossc_<name>_call` with arrays in declaration order; returns (status, message)."""
    entry = getattr(lib, f"lossc_{name}_call")
    entry.restype = ctypes.c_int
    data = (ctypes.c_void_p * len(inputs))(*[a.ctypes.data for a in inputs])
    shapes_kept = [np.array(a.shape, dtype=np.int64) for a in inputs]
    shapes = (I64P * len(inputs))(*[s.ctypes.data_as(I64P) for s in shapes_kept])
    res = (F32P * len(results))(*[r.ctypes.data_as(F32P) for r in results])
    hyper_array = None if hypers is None else (ctypes.c_double * len(hypers))(*hypers)
    message = ctypes.create_string_buffer(512)
    status = entry(data, shapes, hyper_array, res, ctypes.c_int(threads), message, ctypes.c_size_t(512))
    return status, message.value.decode()


def test_library_matches_the_package(library):
    module = lossc.compile(str(SOURCE))
    loss = module[module.losses[0]]
    name = module.losses[0]
    rng = np.random.default_rng(5)
    names = [i.name for i in loss.inputs]
    inputs = {i: f32(rng.standard_normal((33, 7))) for i in names}
    want_loss, want_grads = loss(**inputs)
    ordered = [inputs[i] for i in names]
    got_loss = np.zeros(1, dtype=np.float32)
    grads = {i: np.full((33, 7), np.nan, dtype=np.float32) for i in want_grads}
    # Results in declaration order: the loss, then the gradients of the differentiable inputs.
    results = [got_loss] + [grads[i] for i in names if i in grads]
    status, message = call_generic(library, name, ordered, results)
    assert status == 0, message
    np.testing.assert_allclose(got_loss[0], want_loss, rtol=1e-5, atol=1e-6)
    for i, g in grads.items():
        np.testing.assert_allclose(g, want_grads[i], rtol=1e-4, atol=1e-6)
    # A hyperparameter set per call, as the package sets it.
    hyper = next(iter(loss.hyperparameters))
    want_hot, _ = loss(**inputs, **{hyper: 3.0})
    status, message = call_generic(library, name, ordered, results, hypers=[3.0])
    assert status == 0, message
    np.testing.assert_allclose(got_loss[0], want_hot, rtol=1e-5, atol=1e-6)


def test_bad_shapes_are_a_status_and_the_package_message(library):
    module = lossc.compile(str(SOURCE))
    name = module.losses[0]
    loss = module[name]
    rng = np.random.default_rng(6)
    shapes = [(4, 3), (5, 3)]
    names = [i.name for i in loss.inputs]
    inputs = {i: f32(rng.standard_normal(s)) for i, s in zip(names, shapes)}
    with pytest.raises(lossc.ShapeError) as raised:
        loss(**inputs)
    results = [np.zeros(1, dtype=np.float32)]
    status, message = call_generic(library, name, [inputs[i] for i in names], results)
    assert status == 3
    assert message == str(raised.value)

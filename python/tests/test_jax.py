"""lossc.jax: jax.grad under jax.jit equals the Rust gradient and JAX's own formula."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lossc
import lossc.jax as lj


def test_grad_under_jit_equals_the_rust_gradient():
    rng = np.random.default_rng(0)
    s = rng.standard_normal((9, 5)).astype(np.float32)
    y = rng.integers(0, 5, 9).astype(np.int32)
    f = lj.loss("std::robust::ldr_kl", c=1.5)
    value, grad = jax.jit(jax.value_and_grad(f))(s, y)
    want, grads = lossc.std("robust::ldr_kl")(s=s, y=y, c=1.5)
    assert float(value) == pytest.approx(want, rel=1e-6)
    np.testing.assert_allclose(np.asarray(grad), grads["s"], rtol=1e-6, atol=1e-8)


def test_cross_entropy_equals_jax_formula_inside_a_model():
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.standard_normal((16, 6)), dtype=jnp.float32)
    y = jnp.asarray(rng.integers(0, 4, 16), dtype=jnp.int32)
    w = jnp.asarray(rng.standard_normal((6, 4)), dtype=jnp.float32)
    ce = lj.loss("std::classification::cross_entropy")

    def ours(w):
        return ce(x @ w, y)

    def theirs(w):
        s = x @ w
        return jnp.mean(jax.nn.logsumexp(s, axis=1) - s[jnp.arange(16), y])

    np.testing.assert_allclose(jax.jit(jax.grad(ours))(w), jax.grad(theirs)(w), rtol=1e-5, atol=1e-6)
    assert float(jax.jit(ours)(w)) == pytest.approx(float(theirs(w)), rel=1e-6)


def test_per_sample_loss_backward_uses_the_cotangent():
    rng = np.random.default_rng(2)
    s = jnp.asarray(rng.standard_normal((5, 3)), dtype=jnp.float32)
    y = jnp.asarray([0, 1, 2, 1, 0], dtype=jnp.int32)
    per = lj.loss("std::classification::cross_entropy_per_sample")
    w = jnp.arange(5.0)
    g = jax.jit(jax.grad(lambda s: jnp.sum(per(s, y) * w)))(s)
    ref = jax.grad(lambda s: jnp.sum((jax.nn.logsumexp(s, axis=1) - s[jnp.arange(5), y]) * w))(s)
    np.testing.assert_allclose(g, ref, rtol=1e-5, atol=1e-6)


def test_bad_calls_raise_at_trace_time():
    ce = lj.loss("std::classification::cross_entropy")
    with pytest.raises(lossc.ShapeError, match="dimension N mismatch"):
        jax.jit(ce)(jnp.zeros((2, 3)), jnp.zeros(3, dtype=jnp.int32))
    with pytest.raises(lossc.InputError, match="takes 2 inputs"):
        ce(jnp.zeros((2, 3)))
    with pytest.raises(lossc.HyperparameterError, match="unknown hyperparameter `tau`"):
        lj.loss("std::classification::cross_entropy", tau=1.0)
    # Labels are read when the callback runs: JAX re-raises lossc's error as its own, with the message.
    with pytest.raises(Exception, match="LabelError: label out of range: `y` at position \\[1\\] is 3"):
        ce(jnp.zeros((2, 3)), jnp.asarray([0, 3], dtype=jnp.int32)).block_until_ready()


def test_betti_matching_under_jit_and_grad():
    # A loss calling an extern operation (issue 24): its outputs are computed, so the shapes JAX asks for
    # come from the caller's inputs only; jit and grad agree with the NumPy call.
    import jax

    rng = np.random.RandomState(0)
    x = rng.randn(2, 5, 6).astype(np.float32)
    g = (rng.rand(2, 5, 6) > 0.5).astype(np.float32)
    f = lj.loss("std::topology::betti_matching_both")
    value, grad = jax.jit(jax.value_and_grad(lambda a: f(a, g)))(x)
    core = lossc.std("topology::betti_matching_both")
    want, grads = core(logits=x, g=g)
    np.testing.assert_allclose(float(value), float(want), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(grad), grads["logits"], rtol=1e-4, atol=1e-6)

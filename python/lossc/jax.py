"""lossc losses as JAX functions.

    ce = lossc.jax.loss("std::classification::cross_entropy")
    value, grad = jax.jit(jax.value_and_grad(ce))(scores, labels)

The function is a `jax.custom_vjp` whose forward and backward call the compiled kernel on the CPU through
`jax.pure_callback`, so it works under `jax.jit`, `jax.grad` and `jax.value_and_grad`. Inputs are positional
in the signature's order (state inputs and a per-sample loss's cotangent excluded), hyperparameters keyword
arguments fixed when the function is made. Forward computes the loss and every gradient in one kernel call
and keeps the gradients for backward; a per-sample loss's backward calls the kernel again with its
cotangent. Labels get no cotangent (None). Shapes and hyperparameters are checked when the function is
traced (lossc's exceptions); labels are read when the callback runs, and JAX re-raises a label out of range
as its own runtime error carrying lossc's message.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from . import _core

__all__ = ["loss"]


def _resolve(source, name, backend, threads, stream) -> _core.Loss:
    if isinstance(source, _core.Loss):
        return source
    if isinstance(source, str) and source.startswith("std::"):
        return _core.std(source, backend=backend, threads=threads, stream=stream)
    return _core.compile(source, backend=backend, threads=threads, stream=stream).loss(name)


def loss(
    source,
    name: Optional[str] = None,
    *,
    backend: str = "jit",
    threads: Optional[int] = None,
    stream: bool = False,
    **hyperparameters,
):
    """A JAX function computing the loss `name` of `source` (lx text, a `.lx` path or `"std::module::loss"`);
    `stream`: see `lossc.compile`."""
    compiled = _resolve(source, name, backend, threads, stream)
    if compiled.stateful:
        raise _core._lossc.InputError(f"{compiled.name} keeps per-sample state; use lossc.torch or the NumPy API")
    compiled._native.check_hypers({k: float(v) for k, v in hyperparameters.items()})
    hypers = {k: float(v) for k, v in hyperparameters.items()}
    specs = compiled.call_inputs
    differentiable = [i.differentiable for i in specs]

    def run(arrays, cotangent=None):
        named = {i.name: np.asarray(a) for i, a in zip(specs, arrays)}
        if cotangent is not None:
            named[compiled.cotangent] = np.asarray(cotangent, dtype=np.float32)
        r = compiled.evaluate(**named, **hypers)
        grads = tuple(r.grads[i.name].astype(np.float32) for i in specs if i.differentiable)
        return np.asarray(r.loss, dtype=np.float32), grads

    def shapes(arrays):
        value_shape = compiled.cotangent_shape({i.name: a.shape for i, a in zip(specs, arrays)}) if compiled.per_sample else ()
        value = jax.ShapeDtypeStruct(value_shape, jnp.float32)
        grads = tuple(jax.ShapeDtypeStruct(a.shape, jnp.float32) for i, a in zip(specs, arrays) if i.differentiable)
        return value, grads

    def call(arrays, cotangent=None):
        if cotangent is None:
            return jax.pure_callback(lambda *a: run(a), shapes(arrays), *arrays, vmap_method="sequential")
        return jax.pure_callback(
            lambda c, *a: run(a, c), shapes(arrays), cotangent, *arrays, vmap_method="sequential"
        )

    @jax.custom_vjp
    def f(*arrays):
        return call(arrays)[0]

    def forward(*arrays):
        value, grads = call(arrays)
        return value, (arrays, grads)

    def backward(residual, g):
        arrays, grads = residual
        if compiled.per_sample:
            grads = call(arrays, g)[1]
        else:
            grads = tuple(t * g for t in grads)
        it = iter(grads)
        return tuple(next(it).astype(jnp.asarray(a).dtype) if d else None for d, a in zip(differentiable, arrays))

    f.defvjp(forward, backward)

    def checked(*arrays):
        if len(arrays) != len(specs):
            names = ", ".join(i.name for i in specs)
            raise _core._lossc.InputError(f"{compiled.name} takes {len(specs)} inputs ({names}), got {len(arrays)}")
        arrays = tuple(a if hasattr(a, "shape") else np.asarray(a) for a in arrays)
        # Shapes and hyperparameters are checked at trace time, with the call's own errors.
        shaped = {i.name: (tuple(a.shape), "int64" if i.is_label else "float32") for i, a in zip(specs, arrays)}
        if compiled.per_sample:
            shaped[compiled.cotangent] = (compiled.cotangent_shape({n: s for n, (s, _) in shaped.items()}), "float32")
        compiled.check(shaped, hypers)
        return f(*arrays)

    checked.__name__ = compiled.name
    checked.__doc__ = f"lossc loss {compiled.signature}"
    checked.lossc = compiled
    return checked

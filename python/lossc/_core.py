"""Compiling lx source and calling its losses on NumPy arrays (the layer lossc.torch and lossc.jax share)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import numpy as np

from . import _lossc

BACKENDS = ("jit", "interp", "cuda")


@dataclass(frozen=True)
class InputSpec:
    """One declared input of a loss."""

    name: str
    #: "f32", "f64", "bf16", "f16" or "idx".
    elem: str
    #: The declared shape, one dimension expression per axis ("N", "C", "2 * B", "3").
    shape: Tuple[str, ...]
    nograd: bool
    #: For labels: the bound every value must lie below ("C").
    bound: Optional[str]
    #: For state inputs: the input holding the sample ids its rows are kept by.
    state_key: Optional[str]
    #: The cotangent of a per-sample loss (its gradients are vector-Jacobian products with it).
    cotangent: bool

    @property
    def is_label(self) -> bool:
        return self.elem == "idx"

    @property
    def differentiable(self) -> bool:
        # State inputs and a per-sample loss's cotangent are declared nograd by the compiler.
        return not (self.is_label or self.nograd)

    def __str__(self) -> str:
        dims = f"[{', '.join(self.shape)}]" if self.shape else ""
        text = f"{self.name}: {self.elem}{dims}"
        if self.bound:
            text += f" < {self.bound}"
        if self.nograd:
            text += " nograd"
        if self.state_key:
            text += f" state[{self.state_key}]"
        return text


# The dtypes the native module reads, by name (`dtype.name` costs microseconds).
_DTYPE_NAMES = {np.dtype(t): np.dtype(t).name for t in (np.float32, np.float64, np.int32, np.int64)}


def _as_float(name: str, x: Any) -> np.ndarray:
    """Float inputs: C-contiguous float32 arrays are used in place; anything else (another float dtype,
    integers, a strided view, a list) is converted once to a C-contiguous float32 copy. float64 inputs of a
    loss run by the interpreter keep float64 (see Loss.__call__)."""
    a = np.asarray(x)
    if a.dtype.kind not in "fiub":
        raise _lossc.InputError(f"input `{name}` must be floating point (float32 or float64), but it is {a.dtype}")
    if a.dtype == np.float32 and a.flags.c_contiguous and a.flags.aligned:
        return a
    return np.ascontiguousarray(a, dtype=np.float32)


def _as_labels(name: str, x: Any) -> np.ndarray:
    """Label inputs: C-contiguous int32 or int64 arrays are used in place; other integer dtypes (and
    strided views) are converted once to int64. Floats are refused (a label is never rounded)."""
    a = np.asarray(x)
    if a.dtype.kind not in "iu":
        raise _lossc.InputError(f"input `{name}` must be integer labels (int32 or int64), but it is {a.dtype}")
    if a.dtype in (np.int32, np.int64) and a.flags.c_contiguous and a.flags.aligned:
        return a
    if a.dtype.kind == "u" and a.size and a.max() > np.iinfo(np.int64).max:
        raise _lossc.LabelError(f"input `{name}` holds a label beyond int64")
    return np.ascontiguousarray(a, dtype=np.int64)


def _from_bytes(shape, data, dtype=np.float32) -> np.ndarray:
    return np.frombuffer(data, dtype=dtype).reshape(shape).copy()


@dataclass
class Result:
    """What one call computed: the loss (a float, or a per-sample loss's values), the gradient of every
    differentiable input, and the extra outputs."""

    loss: Any
    grads: Dict[str, np.ndarray]
    outputs: Dict[str, np.ndarray]


class Loss:
    """One compiled loss: its signature, its gradient program, and calls on NumPy arrays."""

    def __init__(self, native, backend: str, threads: Optional[int]):
        self._native = native
        self.backend = backend
        self._threads = threads
        self.name: str = native.name
        self.inputs: Tuple[InputSpec, ...] = tuple(InputSpec(*i) for i in native.inputs())
        #: Hyperparameter defaults by name.
        self.hyperparameters: Dict[str, float] = {n: (int(v) if is_int else v) for n, v, is_int in native.hyperparameters()}
        self._int_hypers = {n for n, _, is_int in native.hyperparameters() if is_int}
        self.outputs: Tuple[Tuple[str, Tuple[str, ...]], ...] = tuple((n, tuple(s)) for n, s in native.outputs())
        #: The per-sample loss's cotangent input, or None for a scalar loss.
        self.cotangent: Optional[str] = next((i.name for i in self.inputs if i.cotangent), None)
        self.stateful: bool = any(i.state_key for i in self.inputs)
        self._by_name = {i.name: i for i in self.inputs}
        # Calls that `__call__` makes itself: a scalar loss on the JIT or CUDA without state.
        self._direct = backend != "interp" and not self.stateful and not self.per_sample
        # os.cpu_count() costs microseconds: looked up once.
        self._default_threads = threads or os.cpu_count() or 1

    @property
    def per_sample(self) -> bool:
        return self.cotangent is not None

    @property
    def signature(self) -> str:
        shown = [str(i) for i in self.inputs if not i.cotangent]
        for name, default in self.hyperparameters.items():
            kind = "idx" if name in self._int_hypers else "f32"
            shown.append(f"{name}: {kind} = {default}")
        return f"{self.name}({', '.join(shown)})"

    @property
    def call_inputs(self) -> Tuple[InputSpec, ...]:
        """The inputs a caller passes: all but state (kept by the loss) and the cotangent."""
        return tuple(i for i in self.inputs if not i.state_key and not i.cotangent)

    @property
    def differentiable(self) -> Tuple[InputSpec, ...]:
        return tuple(i for i in self.inputs if i.differentiable)

    def gradient_source(self) -> str:
        """The simplified gradient program (`lossc compile --emit grad`)."""
        return self._native.gradient_source()

    def threads(self) -> int:
        return self._default_threads

    def __repr__(self) -> str:
        return f"<lossc.Loss {self.signature} on {self.backend}>"

    def _split(self, kwargs: Mapping[str, Any]):
        names = self._by_name
        inputs = {k: v for k, v in kwargs.items() if k in names}
        hypers = {k: float(v) for k, v in kwargs.items() if k not in names}
        return inputs, hypers

    def arrays(self, inputs: Mapping[str, Any], exact: bool = False) -> Dict[str, np.ndarray]:
        """The inputs as the kernel reads them (the conversion rule of `_as_float` / `_as_labels`);
        `exact` keeps float64 arrays as they are (for the interpreter)."""
        out = {}
        for name, x in inputs.items():
            i = self._by_name.get(name)
            if i is not None and i.is_label:
                out[name] = _as_labels(name, x)
            elif exact and np.asarray(x).dtype == np.float64:
                out[name] = np.ascontiguousarray(x)
            else:
                out[name] = _as_float(name, x)
        return out

    def evaluate(self, threads: Optional[int] = None, **kwargs) -> Result:
        """One call: inputs and hyperparameters as keyword arguments. A per-sample loss's `cotangent`
        defaults to ones (its gradients are then those of the sum of its values)."""
        inputs, hypers = self._split(kwargs)
        threads = threads or self.threads()
        exact = self.backend == "interp" and any(np.asarray(v).dtype == np.float64 for v in inputs.values())
        if self.per_sample and self.cotangent not in inputs:
            inputs[self.cotangent] = self._ones_cotangent(inputs)
        arrays = self.arrays(inputs, exact)
        raw = [(n, a, a.shape, _DTYPE_NAMES.get(a.dtype, "?")) for n, a in arrays.items()]
        if self.stateful or exact:
            loss, outputs, grads = self._native.evaluate(raw, hypers, threads, self.stateful)
            dtype = np.float64 if exact else np.float32
            outputs = {n: _from_bytes(s, b, np.float64).astype(dtype) for n, s, b in outputs}
            grads = {n: _from_bytes(s, b, np.float64).astype(dtype) for n, s, b in grads}
        else:
            grads = {}
            slots = []
            for name, a in arrays.items():
                if self._by_name[name].differentiable:
                    g = grads[name] = np.empty(a.shape, dtype=np.float32)
                    slots.append((name, g, g.size))
            loss, outputs = self._native.call(raw, hypers, slots, threads)
            outputs = {n: _from_bytes(s, b) for n, s, b in outputs}
        value = outputs.pop("value") if self.per_sample else loss
        return Result(value, grads, outputs)

    def __call__(self, **kwargs):
        """`(loss, {input: gradient})` on NumPy arrays (see `evaluate` for the outputs too)."""
        if not self._direct:
            r = self.evaluate(**kwargs)
            return r.loss, r.grads
        # The common case (a scalar loss on the JIT, no state) in one pass: what `evaluate` does.
        raw, slots, grads, hypers = [], [], {}, {}
        for name, x in kwargs.items():
            spec = self._by_name.get(name)
            if spec is None:
                hypers[name] = float(x)
                continue
            a = _as_labels(name, x) if spec.is_label else _as_float(name, x)
            raw.append((name, a, a.shape, _DTYPE_NAMES[a.dtype]))
            if spec.differentiable:
                g = grads[name] = np.empty(a.shape, dtype=np.float32)
                slots.append((name, g, g.size))
        loss, _ = self._native.call(raw, hypers, slots, self._default_threads)
        return loss, grads

    def check(self, shapes: Mapping[str, Tuple[Sequence[int], str]], hypers: Mapping[str, float]) -> Dict[str, Tuple[int, ...]]:
        """Checks a call's shapes ({input: (shape, dtype name)}) and hyperparameters without running it (the
        call's own errors); returns the extra outputs' shapes."""
        shapes = {n: (list(s), d) for n, (s, d) in shapes.items()}
        return {n: tuple(s) for n, s in self._native.output_shapes(shapes, dict(hypers))}

    def _ones_cotangent(self, inputs: Mapping[str, Any]) -> np.ndarray:
        """Ones of the cotangent's shape, each of its dimensions read off an input declared with it (a shape
        no input gives is left for the call to report)."""
        return np.ones(self.cotangent_shape({n: np.shape(v) for n, v in inputs.items()}), dtype=np.float32)

    def cotangent_shape(self, shapes: Mapping[str, Sequence[int]]) -> Tuple[int, ...]:
        spec = self._spec(self.cotangent)
        out = []
        for dim in spec.shape:
            size = int(dim) if dim.isdigit() else None
            for i in self.inputs:
                if size is None and i.name in shapes and dim in i.shape and len(shapes[i.name]) == len(i.shape):
                    size = shapes[i.name][i.shape.index(dim)]
            out.append(0 if size is None else size)
        return tuple(out)

    def _spec(self, name: str) -> Optional[InputSpec]:
        return next((i for i in self.inputs if i.name == name), None)

    # State of a stateful loss (SogCLR's u, ALDR-KL's lambda): sparse tables of the sample ids seen.
    def state(self) -> Dict[str, np.ndarray]:
        """The state tables, by state input: float64 arrays of shape [K, 1 + W], one (id, values…) row per
        sample id seen, ids ascending, W values per id (1 for `u: f32[B]`, S·C for `bank: f32[B, S, C]`,
        row-major): the format `lossc eval --state` writes."""
        return {n: np.frombuffer(b, dtype=np.float64).reshape(-1, 1 + w).copy() for n, w, b in self._native.state()}

    def load_state(self, tables: Mapping[str, Any]) -> None:
        """Replaces the state tables: [K, 1 + W] (id, values…) rows as `state()` returns, or a rank-1 array
        of the values of ids 0, 1, … (one per id)."""
        flat = []
        for name, v in tables.items():
            a = np.asarray(v, dtype=np.float64)
            if a.ndim == 1:
                a = np.stack([np.arange(len(a), dtype=np.float64), a], axis=1)
            if a.ndim != 2 or a.shape[1] < 2:
                raise _lossc.InputError(f"state `{name}`: expected (id, values…) rows of shape [K, 1 + W], got {a.shape}")
            flat.append((name, a.shape[1] - 1, [float(x) for x in a.ravel()]))
        self._native.set_state(flat)


class Module:
    """A compiled lx source: its losses by name."""

    def __init__(self, native, backend: str, threads: Optional[int], stream: bool = False):
        self._native = native
        self._backend = backend
        self._threads = threads
        self._stream = stream
        self._losses: Dict[str, Loss] = {}

    @property
    def losses(self) -> Sequence[str]:
        return self._native.losses()

    def loss(self, name: Optional[str] = None) -> Loss:
        """The loss named `name`, or the only one when `name` is None."""
        key = name or ""
        if key not in self._losses:
            native = self._native.kernel(name, self._backend, self._threads or os.cpu_count() or 1, self._stream)
            self._losses[key] = Loss(native, self._backend, self._threads)
        return self._losses[key]

    def __getitem__(self, name: str) -> Loss:
        return self.loss(name)

    def __iter__(self):
        return iter(self.losses)

    def __repr__(self) -> str:
        return f"<lossc.Module losses={list(self.losses)}>"


def _read(source_or_path) -> Tuple[str, str]:
    if isinstance(source_or_path, os.PathLike) or (
        isinstance(source_or_path, str) and "\n" not in source_or_path and source_or_path.endswith(".lx")
    ):
        path = os.fspath(source_or_path)
        try:
            with open(path, encoding="utf-8") as f:
                return f.read(), path
        except OSError as e:
            raise _lossc.CompileError(f"cannot read {path}: {e}") from None
    if not isinstance(source_or_path, str):
        raise TypeError("lossc.compile takes lx source text or the path of a .lx file")
    return source_or_path, "<source>"


def compile(source_or_path, *, backend: str = "jit", threads: Optional[int] = None, stream: bool = False) -> Module:
    """Compiles lx source text, or the `.lx` file at a path. Raises `lossc.CompileError` whose message is
    the rendered diagnostics and whose `.diagnostics` lists (code, message, line, column). With
    `stream=True`, tensors over pairs (a contrastive loss's [B, B] similarities) are recomputed a row at a
    time at any batch size, so memory grows as B · D (slower; the JIT does it by itself for a call over the
    memory budget, LOSSC_MEMORY_BUDGET; the CUDA backend only when asked)."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend `{backend}` (one of {', '.join(BACKENDS)})")
    text, name = _read(source_or_path)
    return Module(_lossc.compile(text, name), backend, threads, stream)


def std(path: str, *, backend: str = "jit", threads: Optional[int] = None, stream: bool = False) -> Loss:
    """A standard-library loss by path: `lossc.std("robust::ldr_kl")` (a leading `std::` is optional)."""
    path = path[len("std::"):] if path.startswith("std::") else path
    module, _, name = path.rpartition("::")
    if not module or not name:
        raise ValueError(f"a stdlib path is `module::loss` (e.g. robust::ldr_kl), not `{path}`")
    return compile(f"use std::{module}::{name}\n", backend=backend, threads=threads, stream=stream)[name]


def stdlib() -> Sequence[Tuple[str, str, str]]:
    """Every stdlib loss: (path, signature, documentation)."""
    return _lossc.stdlib()

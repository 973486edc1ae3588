"""lossc losses as PyTorch modules.

    criterion = lossc.torch.Loss("std::robust::ldr_kl", c=2.0)
    loss = criterion(scores, labels)      # positional in the signature's order, or by name
    loss.backward()

The call is a `torch.library.custom_op` (`lossc::forward`, and `lossc::vjp` for per-sample losses) with a
fake implementation and `register_autograd`, so `torch.compile` traces a model that uses it without a graph
break. Forward computes the loss and every gradient in one kernel call; backward scales the kept gradients
by the incoming gradient (a per-sample loss calls `lossc::vjp` with its cotangent instead). CPU tensors run
on the JIT in place (float32 and int32/int64 contiguous tensors are not copied), on
`torch.get_num_threads()` threads. Tensors of other dtypes are converted once (floats to float32, integers
to int64) and gradients returned in the input's dtype. A module made with `backend="cuda"` runs CUDA tensors
on the CUDA backend (`Kernel::eval_device`): the kernels read the tensors' device memory and write the
gradients into new device tensors on the current stream, with no host round trip but the loss value.
"""

from __future__ import annotations

import itertools
import threading
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from . import _core, _lossc

__all__ = ["Loss"]

# Losses by handle: the ops take an integer handle (a constant in a traced graph) to find their kernel.
_losses: Dict[int, _core.Loss] = {}
_next = itertools.count(1)
_lock = threading.Lock()


def _register(loss: _core.Loss) -> int:
    with _lock:
        handle = next(_next)
        _losses[handle] = loss
    return handle


_NATIVE = {torch.float32: "float32", torch.int64: "int64", torch.int32: "int32"}


def _check_device(t: torch.Tensor) -> None:
    if t.device.type != "cpu":
        raise _lossc.DeviceError(
            f"this loss runs on the CPU but the tensor is on {t.device}; "
            f"make the module with backend=\"cuda\" for CUDA tensors"
        )


# On the device: float inputs in the dtype the loss declares, labels as int64.
_DEVICE_DTYPES = {"f32": torch.float32, "f64": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16, "idx": torch.int64}
_DEVICE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16", torch.int64: "int64"}


def _run_device(loss: _core.Loss, tensors, named, cotangent) -> List[torch.Tensor]:
    """`_run` for CUDA tensors on the CUDA backend: the kernels read the tensors and write the gradients in
    device memory, queued on the current stream; the loss value is copied back (and up again as a tensor)."""
    specs = loss.call_inputs
    device = tensors[0].device
    if any(t.device != device for t in tensors):
        raise _lossc.DeviceError(f"every input of {loss.name} must be on {device}")
    native = [t.detach().to(_DEVICE_DTYPES[i.elem]).contiguous() for i, t in zip(specs, tensors)]
    raw = [(i.name, t.data_ptr(), tuple(t.shape), _DEVICE_NAMES[t.dtype]) for i, t in zip(specs, native)]
    if loss.per_sample:
        shape = loss.cotangent_shape({i.name: t.shape for i, t in zip(specs, native)})
        c = torch.ones(shape, device=device) if cotangent is None else cotangent.detach().float().contiguous()
        native.append(c)
        raw.append((loss.cotangent, c.data_ptr(), tuple(c.shape), "float32"))
    grads, slots = [], []
    for i, t, given in zip(specs, native, tensors):
        if i.differentiable:
            g = torch.empty_like(t)
            grads.append((g, given.dtype))
            slots.append((i.name, g.data_ptr()))
    stream = torch.cuda.current_stream(device).cuda_stream
    value, outputs = loss._native.call_device(raw, named, slots, stream)
    grads = [g if g.dtype == dtype else g.to(dtype) for g, dtype in grads]
    if cotangent is not None:
        return grads
    outputs = {n: torch.from_numpy(_core._from_bytes(s, b, np.float64).astype(np.float32)).to(device) for n, s, b in outputs}
    value = outputs.pop("value") if loss.per_sample else torch.scalar_tensor(value, device=device)
    return [value, *grads, *(outputs[n] for n, _ in _extra(loss))]


def _native(t: torch.Tensor, label: bool) -> torch.Tensor:
    """The tensor as the kernel reads it: contiguous float32 for floats, int32/int64 for labels (others
    converted once: floats to float32, integers to int64)."""
    _check_device(t)
    t = t.detach()
    if label and t.dtype not in (torch.int32, torch.int64):
        t = t.to(torch.int64)
    elif not label and t.dtype != torch.float32:
        t = t.to(torch.float32)
    return t.contiguous()


def _exact(loss: _core.Loss, tensors: Sequence[torch.Tensor]) -> bool:
    """Whether the call goes through the f64 `Tensor` path: float64 on the interpreter, or state kept."""
    return loss.stateful or (loss.backend == "interp" and any(t.dtype == torch.float64 for t in tensors))


def _extra(loss: _core.Loss):
    return [(n, s) for n, s in loss.outputs if n != "value"]


def _run(handle: int, tensors: Sequence[torch.Tensor], hypers: Sequence[float], cotangent=None) -> List[torch.Tensor]:
    """[value, gradient of each differentiable input, each extra output] (with `cotangent`: gradients only)."""
    loss = _losses[handle]
    named = dict(zip(loss.hyperparameters, hypers))
    threads = torch.get_num_threads()
    specs = loss.call_inputs
    if loss.backend == "cuda" and tensors and tensors[0].device.type == "cuda":
        return _run_device(loss, tensors, named, cotangent)
    if _exact(loss, tensors):
        arrays = {}
        for i, t in zip(specs, tensors):
            kept = t.dtype == torch.float64 or t.dtype in _NATIVE
            arrays[i.name] = (t.detach() if kept and t.device.type == "cpu" else _native(t, i.is_label)).numpy()
        if cotangent is not None:
            arrays[loss.cotangent] = _native(cotangent, False).numpy()
        r = loss.evaluate(threads=threads, **arrays, **named)
        grads = [torch.from_numpy(r.grads[i.name]).to(t.dtype) for i, t in zip(specs, tensors) if i.differentiable]
        if cotangent is not None:
            return grads
        value = torch.as_tensor(np.asarray(r.loss, dtype=np.float64 if loss.backend == "interp" else np.float32))
        return [value, *grads, *(torch.from_numpy(np.ascontiguousarray(r.outputs[n])) for n, _ in _extra(loss))]
    # In place: the native call reads the tensors' memory and writes the gradients into new tensors.
    native = [_native(t, i.is_label) for i, t in zip(specs, tensors)]
    raw = [(i.name, t.data_ptr(), t.shape, _NATIVE[t.dtype]) for i, t in zip(specs, native)]
    if loss.per_sample:
        c = torch.ones(loss.cotangent_shape({i.name: t.shape for i, t in zip(specs, native)})) if cotangent is None else _native(cotangent, False)
        raw.append((loss.cotangent, c.data_ptr(), c.shape, "float32"))
    grads, slots = [], []
    for i, t, given in zip(specs, native, tensors):
        if i.differentiable:
            # NumPy's allocator advises huge pages for large arrays: a fresh gradient buffer then costs a
            # few page faults instead of one per 4 KiB (torch.empty_like's, about as long as W1's kernel).
            g = torch.from_numpy(np.empty(tuple(t.shape), dtype=np.float32))
            grads.append((g, given.dtype))
            slots.append((i.name, g.data_ptr(), g.numel()))
    value, outputs = loss._native.call(raw, named, slots, threads)
    # Gradients in the dtype of their input.
    grads = [g if g.dtype == dtype else g.to(dtype) for g, dtype in grads]
    if cotangent is not None:
        return grads
    outputs = {n: torch.from_numpy(_core._from_bytes(s, b)) for n, s, b in outputs}
    value = outputs.pop("value") if loss.per_sample else torch.scalar_tensor(value)
    return [value, *grads, *(outputs[n] for n, _ in _extra(loss))]


def _save(ctx, handle, tensors, hypers, output):
    """What backward needs: the kept gradients (a scalar loss) or the inputs (a per-sample loss's VJP)."""
    loss = _losses[handle]
    ctx.handle, ctx.hypers = handle, list(hypers)
    ctx.differentiable = [i.differentiable for i in loss.call_inputs]
    if loss.per_sample:
        ctx.save_for_backward(*tensors)
    else:
        ctx.save_for_backward(*output[1 : 1 + sum(ctx.differentiable)])


def _input_grads(ctx, g, vjp) -> List[Optional[torch.Tensor]]:
    loss = _losses[ctx.handle]
    if loss.per_sample:
        computed = iter(vjp(ctx.handle, list(ctx.saved_tensors), ctx.hypers, g.contiguous()))
    else:
        computed = iter(t * g.to(t.dtype) for t in ctx.saved_tensors)
    return [next(computed) if d else None for d in ctx.differentiable]


@torch.library.custom_op("lossc::forward", mutates_args=(), device_types=("cpu", "cuda"))
def _forward(handle: int, tensors: List[torch.Tensor], hypers: List[float]) -> List[torch.Tensor]:
    """[value, gradient of each differentiable input, each extra output]."""
    return _run(handle, tensors, hypers)


@_forward.register_fake
def _(handle: int, tensors: List[torch.Tensor], hypers: List[float]) -> List[torch.Tensor]:
    loss = _losses[handle]
    shapes = {i.name: (tuple(t.shape), str(t.dtype).replace("torch.", "")) for i, t in zip(loss.call_inputs, tensors)}
    dtype = torch.float64 if loss.backend == "interp" and _exact(loss, tensors) else torch.float32
    if loss.per_sample:
        value = tensors[0].new_empty(loss.cotangent_shape({n: s for n, (s, _) in shapes.items()}), dtype=dtype)
    else:
        value = tensors[0].new_empty((), dtype=dtype)
    out = [value]
    out.extend(torch.empty_like(t) for i, t in zip(loss.call_inputs, tensors) if i.differentiable)
    if _extra(loss):
        if loss.per_sample:
            shapes[loss.cotangent] = (loss.cotangent_shape({n: s for n, (s, _) in shapes.items()}), "float32")
        found = loss.check(shapes, dict(zip(loss.hyperparameters, hypers)))
        out.extend(tensors[0].new_empty(found[n], dtype=torch.float32) for n, _ in _extra(loss))
    return out


@torch.library.custom_op("lossc::vjp", mutates_args=(), device_types=("cpu", "cuda"))
def _vjp(handle: int, tensors: List[torch.Tensor], hypers: List[float], cotangent: torch.Tensor) -> List[torch.Tensor]:
    """A per-sample loss's gradients: vector-Jacobian products with `cotangent`."""
    return _run(handle, tensors, hypers, cotangent)


@_vjp.register_fake
def _(handle: int, tensors: List[torch.Tensor], hypers: List[float], cotangent: torch.Tensor) -> List[torch.Tensor]:
    loss = _losses[handle]
    return [torch.empty_like(t) for i, t in zip(loss.call_inputs, tensors) if i.differentiable]


def _setup_context(ctx, inputs, output):
    handle, tensors, hypers = inputs
    _save(ctx, handle, tensors, hypers, output)


def _backward(ctx, grads):
    per_tensor = _input_grads(ctx, grads[0], torch.ops.lossc.vjp)
    # A list of floats gets None; an empty list (no hyperparameters) is taken for a list of tensors.
    return None, per_tensor, (None if ctx.hypers else [])


torch.library.register_autograd("lossc::forward", _backward, setup_context=_setup_context)


class _Eager(torch.autograd.Function):
    """The same computation as `lossc::forward` for eager calls, without the custom-op dispatch (a third of
    the per-call overhead); `torch.compile` traces the custom op instead. Returns (value, *extra outputs):
    the gradients stay in the context (not outputs, so nothing else holds them), and `loss.backward()`
    hands them to autograd as they are, which then keeps them as `.grad` without a copy."""

    @staticmethod
    def forward(ctx, handle, hypers, *tensors):
        out = _run(handle, tensors, hypers)
        loss = _losses[handle]
        ctx.handle, ctx.hypers = handle, list(hypers)
        ctx.differentiable = [i.differentiable for i in loss.call_inputs]
        k = sum(ctx.differentiable)
        ctx.save_for_backward(*tensors)
        ctx.grads = None if loss.per_sample else out[1 : 1 + k]
        extra = out[1 + k :]
        ctx.mark_non_differentiable(*extra)
        return (out[0], *extra)

    @staticmethod
    def backward(ctx, g, *_):
        loss = _losses[ctx.handle]
        if loss.per_sample:
            computed = _run(ctx.handle, list(ctx.saved_tensors), ctx.hypers, g.contiguous())
        else:
            # The kept gradients, handed over once; a second backward of a retained graph recomputes them.
            computed, ctx.grads = ctx.grads, None
            if computed is None:
                computed = _run(ctx.handle, list(ctx.saved_tensors), ctx.hypers)[1 : 1 + sum(ctx.differentiable)]
            if not (g.device.type == "cpu" and g.item() == 1.0):
                computed = [t * g.to(t.dtype) for t in computed]
        it = iter(computed)
        del computed
        return (None, None, *(next(it) if d else None for d in ctx.differentiable))


class Loss(torch.nn.Module):
    """An lx loss as a module: `Loss(source, name=None, *, backend="jit", threads=None, stream=False,
    **hyperparameters)` (`stream`: see `lossc.compile`).

    `source` is lx text, the path of a `.lx` file, or a stdlib path (`"std::robust::ldr_kl"`). Calling it with
    the loss's inputs (positionally in the signature's order, or by name; hyperparameters by name override
    the module's) returns the loss tensor, or `(loss, {output: tensor})` when the loss declares extra outputs.
    A stateful loss (SogCLR, ALDR-KL, iSogCLR) keeps its per-sample state in the module; `state_dict()` holds
    it (as extra state) and `load_state_dict()` restores it.
    """

    def __init__(
        self,
        source,
        name: Optional[str] = None,
        *,
        backend: str = "jit",
        threads: Optional[int] = None,
        stream: bool = False,
        **hyperparameters,
    ):
        super().__init__()
        if isinstance(source, _core.Loss):
            self.loss = source
        elif isinstance(source, str) and source.startswith("std::"):
            self.loss = _core.std(source, backend=backend, threads=threads, stream=stream)
        else:
            self.loss = _core.compile(source, backend=backend, threads=threads, stream=stream).loss(name)
        self.loss._native.check_hypers({k: float(v) for k, v in hyperparameters.items()})
        self.hyperparameters = {**self.loss.hyperparameters, **{k: float(v) for k, v in hyperparameters.items()}}
        self._handle = _register(self.loss)

    def extra_repr(self) -> str:
        return f"{self.loss.signature}, backend={self.loss.backend}"

    def forward(self, *args, **kwargs):
        loss = self.loss
        names = [i.name for i in loss.call_inputs]
        if len(args) > len(names):
            raise _lossc.InputError(f"{loss.name} takes {len(names)} inputs ({', '.join(names)}), got {len(args)}")
        given = dict(zip(names, args))
        for k, v in kwargs.items():
            if k in given:
                raise _lossc.InputError(f"input `{k}` given twice")
            given[k] = v
        inputs = {k: v for k, v in given.items() if k in names}
        hypers = {**self.hyperparameters, **{k: float(v) for k, v in given.items() if k not in names}}
        if not all(isinstance(v, torch.Tensor) for v in inputs.values()):
            inputs = {k: v if isinstance(v, torch.Tensor) else torch.as_tensor(v) for k, v in inputs.items()}
        if len(inputs) < len(names) or len(hypers) > len(loss.hyperparameters):
            # Missing inputs and unknown hyperparameters: the call's own errors.
            shapes = {k: (tuple(v.shape), str(v.dtype).replace("torch.", "")) for k, v in inputs.items()}
            if loss.per_sample:
                shapes[loss.cotangent] = (loss.cotangent_shape({k: s for k, (s, _) in shapes.items()}), "float32")
            loss.check(shapes, hypers)
        tensors = [inputs[n] for n in names]
        values = [hypers[h] for h in loss.hyperparameters]
        if torch.compiler.is_compiling():
            out = torch.ops.lossc.forward(self._handle, tensors, values)
        else:
            out = _Eager.apply(self._handle, values, *tensors)
        extra = _extra(loss)
        if extra:
            return out[0], {n: t for (n, _), t in zip(extra, out[len(out) - len(extra) :])}
        return out[0]

    def get_extra_state(self):
        return {n: torch.from_numpy(v) for n, v in self.loss.state().items()}

    def set_extra_state(self, state) -> None:
        self.loss.load_state({n: v.cpu().numpy() if isinstance(v, torch.Tensor) else v for n, v in state.items()})

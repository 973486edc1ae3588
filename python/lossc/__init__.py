"""lossc: losses written in index notation, compiled with their exact gradient.

    import lossc
    ce = lossc.compile('''
        loss ce(s: f32[N, C], y: idx[N] < C) { mean[i] (logsumexp[k] s[i, k]) - s[i, y[i]] }
    ''')["ce"]
    loss, grads = ce(s=scores, y=labels)        # NumPy arrays in, (float, {"s": gradient}) out

`lossc.torch.Loss` is the same loss as a `torch.nn.Module` (autograd, torch.compile, DDP) and
`lossc.jax.loss` a function for `jax.grad` / `jax.jit`.
"""

from ._core import InputSpec, Loss, Module, Result, compile, std, stdlib
from ._lossc import (
    CallError,
    CompileError,
    DeviceError,
    Error,
    HyperparameterError,
    InputError,
    InternalError,
    LabelError,
    ShapeError,
)

__all__ = [
    "CallError",
    "CompileError",
    "DeviceError",
    "Error",
    "HyperparameterError",
    "InputError",
    "InternalError",
    "LabelError",
    "Loss",
    "InputSpec",
    "Module",
    "Result",
    "ShapeError",
    "compile",
    "std",
    "stdlib",
]

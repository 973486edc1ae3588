#!/usr/bin/env python3
"""Times lossc from Python beside `lossc bench` and PyTorch, in one run on one machine.

1. Per-call overhead on a tiny batch (cross-entropy, N=4, C=3): `lossc bench` (the kernel alone, buffers
   prepared), the NumPy API (`Loss.__call__`: conversion rule, the native call, gradients into new arrays),
   and `lossc.torch.Loss` forward + backward (the custom op and autograd).
2. W1 (cross-entropy, N=8192, C=1000, float32) loss + gradient: `lossc bench`, the NumPy API,
   `lossc.torch.Loss` forward + backward, torch eager `F.cross_entropy` and `torch.compile` of it.

Medians over --iters calls after warm-up, on --threads threads (lossc and torch alike). Needs the package
installed (`pip install ./python`) and a release `lossc` (`cargo build --release`, or --lossc PATH).

Usage: python3 tools/bench_python.py [--iters 200] [--threads 2] [--lossc target/release/lossc]
"""
import argparse
import json
import subprocess
from pathlib import Path

import numpy as np

from bench_peers import timeit as median_ms  # same folder: medians after a warm-up call

ROOT = Path(__file__).resolve().parents[1]


def lossc_bench(binary, shape, threads):
    out = subprocess.run(
        [binary, "bench", str(ROOT / "examples/cross_entropy.lx"), "--shape", shape, "--threads", str(threads), "--json"],
        capture_output=True, text=True, check=True,
    ).stdout
    return json.loads(out)["median_ms"]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--iters", type=int, default=200)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--lossc", default=str(ROOT / "target/release/lossc"))
    args = p.parse_args()

    import torch
    import torch.nn.functional as F

    import lossc
    import lossc.torch as lt

    torch.set_num_threads(args.threads)
    ce = lossc.compile(ROOT / "examples/cross_entropy.lx", threads=args.threads).loss()
    crit = lt.Loss(ce)
    rows = []
    for label, n, c in (("tiny N=4 C=3", 4, 3), ("W1 N=8192 C=1000", 8192, 1000)):
        rng = np.random.default_rng(0)
        s = rng.standard_normal((n, c)).astype(np.float32)
        y = rng.integers(0, c, n).astype(np.int64)
        st = torch.from_numpy(s).requires_grad_()
        yt = torch.from_numpy(y)

        def torch_step(loss_fn):
            def step():
                st.grad = None
                loss_fn(st, yt).backward()
            return step

        compiled = torch.compile(F.cross_entropy)
        results = {
            "lossc bench (kernel)": lossc_bench(args.lossc, f"N={n},C={c}", args.threads),
            "lossc NumPy API": median_ms(lambda: ce(s=s, y=y), args.iters),
            "lossc.torch fwd+bwd": median_ms(torch_step(crit), args.iters),
            "torch eager F.cross_entropy": median_ms(torch_step(F.cross_entropy), args.iters),
            "torch.compile F.cross_entropy": median_ms(torch_step(compiled), args.iters),
        }
        for name, ms in results.items():
            rows.append((label, name, ms))
    print(f"torch {torch.__version__}, numpy {np.__version__}, {args.threads} threads, medians of {args.iters} calls")
    for label, name, ms in rows:
        print(f"{label:<18} {name:<30} {ms * 1e3:>10.1f} us")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Times the BENCHMARKS.md workloads (loss + gradient) with JAX and PyTorch on this machine.

Each peer runs whatever of {JAX jit(value_and_grad), PyTorch eager, torch.compile} is installed; missing
ones are reported as such. Data are float32, seeded, shaped as in benches/workloads.rs. Prints one line
per (workload, peer) with the median over --iters runs after warm-up, and with --json a JSON list.

Usage: python3 tools/bench_peers.py [--iters 20] [--json] [--only W1,W2] [--device cpu|cuda]
Compare with `lossc bench examples/<loss>.lx --shape ...` run in the same session on the same machine.
"""
import argparse
import json
import math
import statistics
import time

WORKLOADS = {
    "W1": ("cross-entropy", {"N": 8192, "C": 1000}),
    "W2": ("LDR-KL lambda=1", {"N": 8192, "C": 1000}),
    "W3": ("AnyLoss 1-F1 L=73", {"N": 1_000_000}),
    "W4": ("NT-Xent tau=0.1", {"B": 1024, "D": 128}),
    "W5": ("multi-similarity (64 classes)", {"B": 512, "D": 128}),
    "W6": ("sort BCE, odd-even Cauchy n=16", {"B": 1024, "n": 16}),
    "W7": ("Z-loss", {"N": 8192, "C": 1000}),
    "W8": ("KL-DRO over CE, lambda=1", {"N": 8192, "C": 1000}),
    # GPU only: an LLM's token batch and vocabulary, bf16 logits.
    "LLM": ("cross-entropy, bf16 logits", {"N": 16384, "C": 128256}),
}


def timeit(fn, iters):
    fn()  # warm-up (and compilation)
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def odd_even_layers(n):
    """The odd-even transposition network as (partner, side) per wire per layer (side +1: takes the min)."""
    layers = []
    for layer in range(n):
        partner, side = list(range(n)), [0.0] * n
        for a in range(layer % 2, n - 1, 2):
            partner[a], side[a] = a + 1, 1.0
            partner[a + 1], side[a + 1] = a, -1.0
        layers.append((partner, side))
    return layers


def jax_workloads(device="cpu"):
    import jax
    import jax.numpy as jnp

    platform = "gpu" if device == "cuda" else "cpu"
    if jax.default_backend() != platform:
        raise RuntimeError(f"JAX runs on {jax.default_backend()}, not {platform}")

    def ce(s, y):
        return jnp.mean(jax.nn.logsumexp(s, axis=1) - jnp.take_along_axis(s, y[:, None], 1)[:, 0])

    def ldr(s, y, lam=1.0):
        c = s.shape[1]
        sy = jnp.take_along_axis(s, y[:, None], 1)
        m = (jnp.arange(c)[None, :] != y[:, None]) + s - sy
        return jnp.mean(lam * jax.nn.logsumexp(m / lam, axis=1) - lam * jnp.log(c))

    def anyloss(p, y, L=73.0):
        a = jax.nn.sigmoid(L * (p - 0.5))
        tp = jnp.sum(a * y)
        fp = jnp.sum(a * (1 - y))
        fn = jnp.sum((1 - a) * y)
        return 1 - 2 * tp / (2 * tp + fp + fn)

    def ntxent(a, b, tau=0.1):
        a = a / jnp.linalg.norm(a, axis=1, keepdims=True)
        b = b / jnp.linalg.norm(b, axis=1, keepdims=True)
        z = jnp.concatenate([a, b]) @ jnp.concatenate([a, b]).T / tau
        n = a.shape[0]
        z = z - 1e9 * jnp.eye(2 * n)
        pos = jnp.concatenate([jnp.arange(n, 2 * n), jnp.arange(n)])
        return jnp.mean(jax.nn.logsumexp(z, axis=1) - z[jnp.arange(2 * n), pos])

    def ms(x, y, alpha=2.0, beta=50.0, base=0.5, eps=0.1):
        s = x @ x.T
        same = y[:, None] == y[None, :]
        eye = jnp.eye(x.shape[0], dtype=bool)
        pos = same & ~eye
        neg = ~same
        min_pos = jnp.min(jnp.where(pos, s, jnp.inf), axis=1, keepdims=True)
        max_neg = jnp.max(jnp.where(neg, s, -jnp.inf), axis=1, keepdims=True)
        hard_neg = neg & (s + eps > jax.lax.stop_gradient(min_pos))
        hard_pos = pos & (s - eps < jax.lax.stop_gradient(max_neg))
        lp = jnp.log1p(jnp.sum(jnp.where(hard_pos, jnp.exp(-alpha * (s - base)), 0), axis=1)) / alpha
        ln = jnp.log1p(jnp.sum(jnp.where(hard_neg, jnp.exp(beta * (s - base)), 0), axis=1)) / beta
        return jnp.mean(lp + ln)

    def zloss(s, y, eps=1e-12):
        mu = jnp.mean(s, axis=1)
        sigma = jnp.sqrt(jnp.mean(s * s, axis=1) - mu * mu)
        z = (jnp.take_along_axis(s, y[:, None], 1)[:, 0] - mu) / (sigma + eps)
        return jnp.sum(jax.nn.softplus(-z))

    def kldro(s, y, lam=1.0):
        l = jax.nn.logsumexp(s, axis=1) - jnp.take_along_axis(s, y[:, None], 1)[:, 0]
        return lam * (jax.nn.logsumexp(l / lam) - jnp.log(l.shape[0]))

    def sort_bce(x, gt, steepness=10.0):
        # diffsort's odd-even network with the Cauchy relaxation, written with partner gathers
        n = x.shape[1]
        P = jnp.broadcast_to(jnp.eye(n), (x.shape[0], n, n))
        for partner, side in odd_even_layers(n):
            partner, side = jnp.array(partner), jnp.array(side)
            xo = x[:, partner]
            alpha = jnp.arctan(steepness * side * (xo - x)) / jnp.pi + 0.5
            x = alpha * x + (1 - alpha) * xo
            P = alpha[:, None, :] * P + (1 - alpha[:, None, :]) * P[:, :, partner]
        lp = jnp.maximum(jnp.log(P), -100.0)
        lq = jnp.maximum(jnp.log(1 - P), -100.0)
        return -jnp.mean(gt * lp + (1 - gt) * lq)

    key = jax.random.PRNGKey(0)
    k1, k2, k3 = jax.random.split(key, 3)
    s = jax.random.normal(k1, (8192, 1000), jnp.float32)
    y = jax.random.randint(k2, (8192,), 0, 1000)
    p = jax.random.uniform(k1, (1_000_000,), jnp.float32)
    yb = (jax.random.uniform(k2, (1_000_000,)) > 0.5).astype(jnp.float32)
    va = jax.random.normal(k1, (1024, 128), jnp.float32)
    vb = jax.random.normal(k2, (1024, 128), jnp.float32)
    xm = jax.random.normal(k3, (512, 128), jnp.float32)
    ym = jax.random.randint(k2, (512,), 0, 64)
    xs = jax.random.normal(k1, (1024, 16), jnp.float32)
    ts = jax.random.normal(k2, (1024, 16), jnp.float32)
    gts = jnp.swapaxes(jax.nn.one_hot(jnp.argsort(ts, axis=1), 16), 1, 2)
    cases = {
        "W1": (ce, (s, y)), "W2": (ldr, (s, y)), "W3": (anyloss, (p, yb)), "W4": (ntxent, (va, vb)),
        "W5": (ms, (xm, ym)), "W6": (sort_bce, (xs, gts)), "W7": (zloss, (s, y)), "W8": (kldro, (s, y)),
    }
    if device == "cuda":
        n, c = WORKLOADS["LLM"][1]["N"], WORKLOADS["LLM"][1]["C"]
        logits = jax.random.normal(k1, (n, c), jnp.bfloat16)
        labels = jax.random.randint(k2, (n,), 0, c)
        cases["LLM"] = (ce, (logits, labels))
    out = {}
    for w, (fn, args) in cases.items():
        g = jax.jit(jax.value_and_grad(fn))

        def run(g=g, args=args):
            v, gr = g(*args)
            gr.block_until_ready()
        out[w] = run
    return out


def torch_workloads(compiled, device="cpu"):
    import torch
    import torch.nn.functional as F

    torch.manual_seed(0)
    dev = torch.device(device)

    def leaf(t):
        return t.to(dev).requires_grad_(True)

    s = leaf(torch.randn(8192, 1000))
    y = torch.randint(0, 1000, (8192,), device=dev)
    p = leaf(torch.rand(1_000_000))
    yb = (torch.rand(1_000_000, device=dev) > 0.5).float()
    va, vb = leaf(torch.randn(1024, 128)), leaf(torch.randn(1024, 128))
    xm = leaf(torch.randn(512, 128))
    ym = torch.randint(0, 64, (512,), device=dev)
    xs = leaf(torch.randn(1024, 16))
    gts = F.one_hot(torch.argsort(torch.randn(1024, 16, device=dev), dim=-1), 16).transpose(-2, -1).float()

    def ce(s, y):
        return F.cross_entropy(s, y)

    def ldr(s, y, lam=1.0):
        c = s.shape[1]
        sy = s.gather(1, y[:, None])
        m = (torch.arange(c, device=s.device)[None, :] != y[:, None]).float() + s - sy
        return torch.mean(lam * torch.logsumexp(m / lam, 1) - lam * math.log(c))

    def anyloss(p, y, L=73.0):
        a = torch.sigmoid(L * (p - 0.5))
        tp, fp, fn = (a * y).sum(), (a * (1 - y)).sum(), ((1 - a) * y).sum()
        return 1 - 2 * tp / (2 * tp + fp + fn)

    def ntxent(a, b, tau=0.1):
        z = torch.cat([F.normalize(a, dim=1), F.normalize(b, dim=1)])
        z = z @ z.T / tau
        n = a.shape[0]
        z = z - 1e9 * torch.eye(2 * n, device=z.device)
        pos = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(z.device)
        return torch.mean(torch.logsumexp(z, 1) - z[torch.arange(2 * n, device=z.device), pos])

    def ms(x, y, alpha=2.0, beta=50.0, base=0.5, eps=0.1):
        sim = x @ x.T
        same = y[:, None] == y[None, :]
        eye = torch.eye(x.shape[0], dtype=torch.bool, device=x.device)
        pos, neg = same & ~eye, ~same
        inf = torch.tensor(float("inf"), device=x.device)
        min_pos = torch.where(pos, sim, inf).min(1, keepdim=True).values.detach()
        max_neg = torch.where(neg, sim, -inf).max(1, keepdim=True).values.detach()
        hard_neg = neg & (sim + eps > min_pos)
        hard_pos = pos & (sim - eps < max_neg)
        zero = torch.zeros((), device=x.device)
        lp = torch.log1p(torch.where(hard_pos, torch.exp(-alpha * (sim - base)), zero).sum(1)) / alpha
        ln = torch.log1p(torch.where(hard_neg, torch.exp(beta * (sim - base)), zero).sum(1)) / beta
        return torch.mean(lp + ln)

    def zloss(s, y, eps=1e-12):
        mu = s.mean(1)
        sigma = torch.sqrt((s * s).mean(1) - mu * mu)
        z = (s.gather(1, y[:, None])[:, 0] - mu) / (sigma + eps)
        return F.softplus(-z).sum()

    def kldro(s, y, lam=1.0):
        l = F.cross_entropy(s, y, reduction="none")
        return lam * (torch.logsumexp(l / lam, 0) - math.log(l.shape[0]))

    def sort_bce(x, gt, steepness=10.0):
        n = x.shape[1]
        P = torch.eye(n, device=x.device).expand(x.shape[0], n, n)
        for partner, side in odd_even_layers(n):
            partner = torch.tensor(partner, device=x.device)
            side = torch.tensor(side, device=x.device)
            xo = x[:, partner]
            alpha = torch.atan(steepness * side * (xo - x)) / math.pi + 0.5
            x = alpha * x + (1 - alpha) * xo
            P = alpha[:, None, :] * P + (1 - alpha[:, None, :]) * P[:, :, partner]
        return F.binary_cross_entropy(P, gt)

    cases = {
        "W1": (ce, (s, y)), "W2": (ldr, (s, y)), "W3": (anyloss, (p, yb)), "W4": (ntxent, (va, vb)),
        "W5": (ms, (xm, ym)), "W6": (sort_bce, (xs, gts)), "W7": (zloss, (s, y)), "W8": (kldro, (s, y)),
    }
    if dev.type == "cuda":
        n, c = WORKLOADS["LLM"][1]["N"], WORKLOADS["LLM"][1]["C"]
        logits = leaf(torch.randn(n, c, dtype=torch.bfloat16, device=dev))
        labels = torch.randint(0, c, (n,), device=dev)
        cases["LLM"] = (ce, (logits, labels))
    out = {}
    for w, (fn, args) in cases.items():
        fn = torch.compile(fn) if compiled else fn

        def run(fn=fn, args=args):
            for a in args:
                if a.requires_grad:
                    a.grad = None
            fn(*args).backward()
            if dev.type == "cuda":
                torch.cuda.synchronize()
        out[w] = run
    return out


def liger_workloads(device):
    """Liger-Kernel's fused Triton cross-entropy (GPU only) on W1 and the LLM-sized batch."""
    import torch
    from liger_kernel.transformers import LigerCrossEntropyLoss

    if device != "cuda":
        raise RuntimeError("Liger-Kernel runs on CUDA only")
    torch.manual_seed(0)
    loss = LigerCrossEntropyLoss()
    out = {}
    for w, dtype in (("W1", torch.float32), ("LLM", torch.bfloat16)):
        n, c = WORKLOADS[w][1]["N"], WORKLOADS[w][1]["C"]
        s = torch.randn(n, c, dtype=dtype, device="cuda", requires_grad=True)
        y = torch.randint(0, c, (n,), device="cuda")

        def run(s=s, y=y):
            s.grad = None
            loss(s, y).backward()
            torch.cuda.synchronize()
        out[w] = run
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--only", default="")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                    help="where the peers run (cuda: also the LLM-sized bf16 cross-entropy and Liger-Kernel)")
    args = ap.parse_args()
    only = set(filter(None, args.only.split(",")))
    results = []
    d = args.device
    peers = [("jax jit(value_and_grad)", lambda: jax_workloads(d)), ("pytorch eager", lambda: torch_workloads(False, d)),
             ("torch.compile", lambda: torch_workloads(True, d)), ("liger-kernel", lambda: liger_workloads(d))]
    for name, make in peers:
        try:
            cases = make()
        except Exception as e:  # not installed, or failed to build
            results.append({"peer": name, "error": f"{type(e).__name__}: {e}"})
            continue
        for w, fn in cases.items():
            if only and w not in only:
                continue
            results.append({"peer": name, "workload": w, "what": WORKLOADS[w][0], "shape": WORKLOADS[w][1],
                            "median_ms": timeit(fn, args.iters)})
    if args.json:
        print(json.dumps(results, indent=1))
    else:
        for r in results:
            if "error" in r:
                print(f"{r['peer']:<26} unavailable ({r['error'][:60]})")
            else:
                print(f"{r['peer']:<26} {r['workload']} {r['what']:<32} {r['median_ms']:9.3f} ms")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Writes the small bundled inputs of examples/ as .npy files (no numpy needed).

Deterministic: re-running reproduces the committed files byte for byte.
Floats are float32, labels int64. Usage: python3 tools/make_example_data.py
"""
import os
import random
import struct

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples", "data")


def save(path, shape, values, dtype):
    descr, fmt = {"f4": ("<f4", "<f"), "i8": ("<i8", "<q")}[dtype]
    shape_str = "(" + "".join(f"{d}, " for d in shape).rstrip(" ") + ")" if len(shape) != 1 else f"({shape[0]},)"
    if len(shape) == 0:
        shape_str = "()"
    header = "{'descr': '%s', 'fortran_order': False, 'shape': %s, }" % (descr, shape_str)
    pad = 64 - (10 + len(header) + 1) % 64
    header = header + " " * pad + "\n"
    with open(path, "wb") as f:
        f.write(b"\x93NUMPY\x01\x00")
        f.write(struct.pack("<H", len(header)))
        f.write(header.encode("latin1"))
        for v in values:
            f.write(struct.pack(fmt, v))


def example(name, inputs):
    d = os.path.join(ROOT, name)
    os.makedirs(d, exist_ok=True)
    for input_name, (shape, values, dtype) in inputs.items():
        save(os.path.join(d, input_name + ".npy"), shape, values, dtype)


def normal(rng, n, scale=1.0):
    return [round(rng.gauss(0.0, scale), 4) for _ in range(n)]


def main():
    rng = random.Random(20261128)
    n, c = 6, 5
    logits = lambda: normal(rng, n * c, 2.0)
    labels = lambda k=c: [rng.randrange(k) for _ in range(n)]
    example("cross_entropy", {"s": ([n, c], logits(), "f4"), "y": ([n], labels(), "i8")})
    example("ldr_kl", {"s": ([n, c], logits(), "f4"), "y": ([n], labels(), "i8")})
    example("z_loss", {"s": ([n, c], logits(), "f4"), "y": ([n], labels(), "i8")})
    example("kl_dro", {"s": ([n, c], logits(), "f4"), "y": ([n], labels(), "i8")})
    example("gce", {"s": ([n, c], logits(), "f4"), "y": ([n], labels(), "i8")})
    example("multi_margin", {"s": ([n, c], logits(), "f4"), "y": ([n], labels(), "i8")})
    example("distill", {"s": ([n, c], logits(), "f4"), "t": ([n, c], logits(), "f4")})
    m = 10
    example("anyloss_f1", {
        "p": ([m], [round(rng.uniform(0.02, 0.98), 4) for _ in range(m)], "f4"),
        "y": ([m], [float(rng.randrange(2)) for _ in range(m)], "f4"),
    })
    example("focal_binary", {
        "x": ([m], normal(rng, m, 2.0), "f4"),
        "y": ([m], [float(rng.randrange(2)) for _ in range(m)], "f4"),
    })
    example("auc_logistic", {"s": ([m], normal(rng, m), "f4"), "y": ([m], [0, 1] + [rng.randrange(2) for _ in range(m - 2)], "i8")})
    b, dd = 8, 4
    x = []
    for _ in range(b):
        row = normal(rng, dd)
        norm = sum(v * v for v in row) ** 0.5
        x += [round(v / norm, 4) for v in row]
    example("multi_similarity", {"x": ([b, dd], x, "f4"), "y": ([b], [0, 0, 1, 1, 2, 2, 3, 3], "i8")})
    example("cs_divergence", {"x": ([5, 3], normal(rng, 15), "f4"), "z": ([4, 3], [v + 0.5 for v in normal(rng, 12)], "f4")})


if __name__ == "__main__":
    main()

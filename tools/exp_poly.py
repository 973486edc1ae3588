#!/usr/bin/env python3
"""Fits the polynomial Q of lossc's f32 exp (src/backend/jit/math.rs, EXP_COEFFICIENTS).

e^r = 1 + r + r^2 Q(r) on |r| <= ln2/2, Q of degree 4, minimizing the maximum relative error of e^r
(Lawson's iteratively reweighted least squares, which converges to the minimax fit). Prints the
coefficients, highest degree first, and the error of the f32-rounded coefficients in exact arithmetic.
Needs numpy.
"""
import numpy as np

HALF_LN2 = np.log(2) / 2


def fit(degree, points=4000, rounds=200):
    r = HALF_LN2 * np.cos(np.pi * (np.arange(points) + 0.5) / points)
    g = (np.expm1(r) - r) / r**2
    # An error d in Q is an error r^2 d in e^r: weigh by r^2 / e^r for the relative error.
    w = r**2 / np.exp(r)
    a = np.vander(r, degree + 1, increasing=True)
    lawson = np.full_like(r, 1.0 / points)
    for _ in range(rounds):
        s = np.sqrt(lawson) * w
        coef, *_ = np.linalg.lstsq(a * s[:, None], g * s, rcond=None)
        err = np.abs((a @ coef - g) * w)
        lawson *= err
        lawson /= lawson.sum()
    coef32 = coef.astype(np.float32).astype(np.float64)
    return coef32[::-1], np.max(np.abs((a @ coef32 - g) * w))


if __name__ == "__main__":
    coefficients, error = fit(4)
    print("EXP_COEFFICIENTS =", [float(np.float32(c)) for c in coefficients])
    print("max relative error of e^r (exact arithmetic): %.2e" % error)
